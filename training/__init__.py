"""Training the captioner: data, the feature cache, cross-entropy and SCST, grounding, evaluation (`make train`)."""
