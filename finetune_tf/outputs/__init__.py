"""What a trained tuner gives back: model files (`saving`), serving and
mobile exports (`export`), the evaluation report (`report`) and its plots
(`plots`)."""
