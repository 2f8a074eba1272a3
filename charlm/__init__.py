"""A character-level language model (truncated BPTT, sampling, interpretable cells): the theory's first RNN
system, beside the captioner. It shares the captioner's recurrent core and checkpoint reader, and is not
part of the captioning library or the service."""
