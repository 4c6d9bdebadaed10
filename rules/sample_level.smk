# Sample-level detection (Razmi & Xiong, CAE / CAE+): filled in by the sample-level part.


def sample_level_targets():
    return []
