"""Pusa Studio's engine: Pusa V1.0 (Wan2.1-T2V-14B + LoRA, one timestep per latent frame) on diffusers.

No UI code lives here. What the app uses:

- ``pusa_core.engine``: ``Engine`` (``from_source``, ``from_components``, ``start``, ``status``, ``defaults``,
  ``generate``, ``memory_report``), ``SpeedOptions`` (preset, stacked LoRAs, attention backend, compile),
  ``Progress``, ``GenerationResult``, ``EngineStatus``, ``OutOfMemory``
- ``pusa_core.adapters``: ``LoraCatalog``, ``LoraSpec``, ``parse_extra_lora`` (the LoRAs stacked on Pusa's)
- ``pusa_core.requests``: ``Settings``, ``ImageToVideo``, ``MultiFrames``, ``VideoToVideo``, ``TextToVideo``,
  ``request_to_dict``, ``request_from_dict``, ``preset_settings``, ``DEFAULT_NEGATIVE_PROMPT``
- ``pusa_core.conditioning``: ``parse_positions``, ``parse_multipliers``, frame <-> latent-slot helpers
- ``pusa_core.errors``: ``PusaInputError``, ``GenerationCancelled``, ``JobTimedOut``, ``EngineNotReady``
- ``pusa_core.weights``: ``resolve_model_source``, ``preflight``, ``ModelSource``
- ``pusa_core.media``: ``read_settings``
- ``pusa_core.ranks``: ``Ranks`` (``join``, ``leave``; ``Engine.follow`` on the other ranks), the ranks of a
  ``torchrun`` launch that run every job together

Submodules are imported on demand so command-line tools (``python -m pusa_core.download``) start fast.
"""
