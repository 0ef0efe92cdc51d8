"""Reporting: the figures (:mod:`.plots`, the only module that imports matplotlib) and the summary tables
(:mod:`.summary`) drawn from a study's tables on disk.
"""
