"""BatchNorm and the learning rate: the largest stable lr and the best accuracy over a log grid."""
