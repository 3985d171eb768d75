"""lightcl.data: the data layer. Real datasets (found offline where possible, downloaded with a checksum),
class-incremental task streams, host-side transforms and augmentation.

Layers point one way: bench -> export -> data -> engine (tests/test_layering.py). This package imports
only ``lightcl.engine`` (normalisation itself stays in ``lightcl.engine.preprocess``, where the device
uses it). Modules: :mod:`.datasets`, :mod:`.download`, :mod:`.tasks`, :mod:`.transforms`, :mod:`.errors`,
:mod:`.scenarios` (the named scenarios), :mod:`.stream` (the one continual-learning loop).
Nothing is imported here, so ``lightcl.data.errors`` stays cheap (the package root re-exports its error).
"""
