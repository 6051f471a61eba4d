"""Drop-in replacements for other packages' tabular solvers, computed by softvi.

- :mod:`softvi.compat.imitation`: ``mce_partition_fh`` and ``mce_occupancy_measures`` of
  ``imitation.algorithms.mce_irl``.
"""
