"""`make bench`: the whole backup path measured end to end on a lab, as ratios against baselines of the same run."""
