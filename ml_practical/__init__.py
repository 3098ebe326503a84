"""ml_practical: the engineering that makes deep networks train, as small tested JAX/Flax pieces."""
