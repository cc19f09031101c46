"""How a FineTuner's model trains: `compile` (the settings and every compile
made from them), `fit_args` (Keras' fit arguments, parsed once), `loop` (a fit
call: stages, feature cache or Keras fit, XLA fallback, seeded order, resume),
`stages` and `recipes` (schedules), `layerwise` (discriminative learning
rates), `feature_cache` and `feature_store`, `run_state` (resumable runs) and
`state_file` (their state on disk), `seeding`,
`data_checks` and `lr_finder`."""
