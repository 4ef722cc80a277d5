"""The networks: the shared transformer trunk, the AR and diffusion models on it, the refiner, LoRA,
and a registry of model kinds.  Only torch: parallelism, precision and launch are applied from
outside by ``physfm.train``."""
