"""The training engine: the loop (trainer), its callbacks, one fold (factories and callbacks), folds, patch sampling,
and the library call behind `sarcomakit train`."""
