"""Where and how the computation runs: devices and strategies (`devices`),
mixed precision (`precision`), Keras fixes for several workers
(`multi_worker`) and the progress lines (`progress`)."""
