"""The sync engine: plan what the target lacks, transfer it in closure order, publish the head."""
