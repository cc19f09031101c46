"""Where pretrained weights come from: `keras.applications` names
(`applications`), model files and SavedModel directories (`files`), TF Hub
handles (`hub`), and every "could this file run code" check made before any
of them is read (`trust`)."""
