"""The genrm_judge environment: a pairwise generative reward model scores the policy against a baseline."""
