"""Models: r3d (backbones), heads (projection MLP, classifier), pretrainer, classifier."""
