"""Where and how the computation runs: devices and strategies (`devices`), one
tuner's placement (`placement`), mixed precision (`precision`), who writes files
under several workers (`chief`), Keras fixes for several workers
(`multi_worker`) and the progress lines (`progress`)."""
