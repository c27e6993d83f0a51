"""What a run records and reads back: checkpoints, run folders, and the plans a run is made of."""
