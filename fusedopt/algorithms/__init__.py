"""The optimizers: one module per family, each declaring its hyperparameters, slots,
named scalars and its element rule, written once."""
