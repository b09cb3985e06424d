"""A run's configuration, by job: :mod:`~normlab.config.schema` (the typed Hydra schema),
:mod:`~normlab.config.validation` (value checks before any work) and
:mod:`~normlab.config.identity` (what a run's record and id hold, its cell)."""
