"""The model a FineTuner trains: the backbone (`backbone`, `kinds`, `layers`,
`preprocessing`), what trains (`freeze`), the head and its tasks (`head/`),
and how they are put together (`assembly`, `tuned_model`)."""
