"""The chapter's lab on a CNN (section 21) and its CIFAR-10 bonus: the ablation's rows on a CNN and an MLP."""
