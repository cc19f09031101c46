"""How a FineTuner's model trains: `compile` (the settings and every compile made
from them) and `loop` (a fit call: stages, feature cache or Keras fit, XLA
fallback, seeded order, resume)."""
