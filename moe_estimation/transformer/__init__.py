"""A small prefix-tuned transformer in JAX: the real-model side of the prefix-tuning question.

- :mod:`.model`: the backbone (token and position embeddings, pre-LN attention + MLP blocks, mean pool, a
  linear head) with a prefix hook in every attention layer; :func:`.model.attention` is the raw attention
  row that the bridge test matches against the MoE regression function of the core library.
- :mod:`.tasks`: the synthetic pre-training and downstream tasks (nothing is downloaded).
- :mod:`.prefixes`: the three parameterisations of docs/maths.md, *The transformer*: no-share, simple-share, deep-share.
- :mod:`.train`: pre-training, prefix-tuning with a frozen backbone, the learning-rate search and the
  learning curves.
"""

from .model import BackboneConfig as BackboneConfig
from .model import attention as attention
from .model import forward as forward
from .model import init_backbone as init_backbone
from .prefixes import PARAMETERISATIONS as PARAMETERISATIONS
from .prefixes import init_prefix as init_prefix
from .prefixes import prefix_kv as prefix_kv
