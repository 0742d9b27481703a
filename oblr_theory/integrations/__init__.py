"""Adapters to the trainers people run; torch only, imported explicitly (never from
``import oblr_theory``).

- :mod:`oblr_theory.integrations.trl`: ``OBLRPOConfig`` / ``OBLRPOTrainer``, subclasses of TRL's
  ``GRPOConfig`` / ``GRPOTrainer`` (needs the ``[trl]`` extra). See ``docs/trl.md``.
- :mod:`oblr_theory.integrations.verl`: the registry's estimators with verl's advantage signature,
  registered in verl's advantage registry (verl installed without its dependencies). See ``docs/verl.md``.
"""
