"""What each command computes, as records for ``cnncli.render`` to draw."""
