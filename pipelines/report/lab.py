"""What the lab ran and wrote: its variants by part, the names of its data, and its prose notes."""
from __future__ import annotations

SIMPLE_CNN = "mnist_cnn"
SIMPLE_CNN_20EP = "mnist_cnn_20ep"     # Part 1.1 "would more epochs help?"
SIMPLE_CNN_SMALL = "mnist_cnn_small"   # Part 1.1 "a cheaper network"
ALEXNET = "cifar_alexnet"
ALEXNET_CLAIM_EPOCH = 10               # the lab: "overfitting after epoch 10"
TL_OPTIONS = (
    ("tl_scratch", "trained from scratch"),
    ("tl_svm", "pretrained + linear SVM"),
    ("tl_finetune", "fine-tuning, no augmentation"),
    ("tl_finetune_aug", "fine-tuning, with augmentation"),
)
LAB_VARIANTS = (SIMPLE_CNN, ALEXNET) + tuple(v for v, _ in TL_OPTIONS)

SOURCE_TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "hymenoptera": "ants vs bees",
}

# What the lab's report says in prose (quoted from the lab's written report); params.yaml `lab:` holds only the
# numbers that sit in comparison tables.
LAB_NOTES = {
    (SIMPLE_CNN, "sizes"): "The lab's table: 60,000 training and 10,000 validation images of 28×28. "
                           "(It says 3 channels; MNIST has 1. The table above is what the data is.)",
    (SIMPLE_CNN, "confusions"): "The lab's two most frequent confusions on MNIST: true 7 → predicted 2 "
                                "(8 cases) and true 6 → predicted 0 (7 cases).",
    (ALEXNET, "params"): "The lab's per-layer table listed the 61,100,840 parameters of the ImageNet AlexNet "
                         "instead of this model's; the table above is this model's and sums to its total.",
    (ALEXNET, "log"): "The lab's log: validation accuracy 10.00 % at epoch 1 rising to 71.27 % at epoch 15; "
                      "validation loss bottomed out near epochs 10–14 while training loss kept falling.",
    (ALEXNET, "confusions"): "The lab's most frequent confusions on CIFAR-10: cat ↔ dog (224 cases), "
                             "truck ↔ automobile, ship → airplane (92 cases).",
}
