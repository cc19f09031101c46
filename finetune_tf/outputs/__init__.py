"""What a trained tuner gives back: model files (`saving`), the tuner's own
settings and file (`tuner_config`), serving and mobile exports (`export`), the
evaluation report (`report`) and its plots (`plots`)."""
