"""BatchNorm and initialization: steps to a target training loss per init x norm x optimizer."""
