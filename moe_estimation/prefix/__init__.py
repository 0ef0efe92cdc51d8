"""The prefix-tuning mixture of experts, the model the project began with (docs/maths.md, *The regression model*).

Its parts, in the order data flows: :mod:`.structures` (a prompt's key and value from its free vector),
:mod:`.problems` (the frozen experts, the structure and the true mixing measure), :mod:`.model` (f_G for one
input), :mod:`.data` (simulation), :mod:`.estimator` (the least-squares fit with its closed-form Jacobian) and
:mod:`.voronoi` (the Voronoi losses and the identified part). The same model is one assembly of the lab's parts
(:func:`moe_estimation.lab.from_problem`); the public names are re-exported by :mod:`moe_estimation`.
"""
