"""The model a FineTuner trains: backbone, head and how they are put together.

`head/` holds the head and its tasks; `assembly` wires raw inputs through
augmentation, input adaptation, preprocessing and the backbone to the head.
"""
