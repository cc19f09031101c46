"""Where pretrained weights come from: `keras.applications` names
(`applications`), model files and SavedModel directories (`files`), TF Hub
handles (`hub_handles`, loaded by `hub`'s `HubLayer`), and every "could this
file run code" check made before any of them is read: a model config's
(`trust`), a SavedModel graph's ops (`savedmodel_trust`, against `allowed_ops`)."""
