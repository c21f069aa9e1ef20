"""The PyTorch side of the comparisons (bench_train.py, profile_ops.py, parity_torch.py): torchvision's ResNet-50
layout, and the network, triplet loss and SGD set up as ours are. torch is imported where they are built (it is a
benchmark-only dependency: requirements-bench.txt)."""


def torchvision_resnet50(torch, classes=1000, eps=1e-5):
    """torchvision's ResNet-50 (v1.5) module layout and names (torchvision is not needed); BatchNorm eps `eps`,
    momentum 0.1 (torch's convention: MindSpore's 0.9). forward / features: the 2048-d average-pooled features."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            mid = width // 4
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps)
            self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid, eps)
            self.conv3, self.bn3 = nn.Conv2d(mid, width, 1, bias=False), nn.BatchNorm2d(width, eps)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != width:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                                nn.BatchNorm2d(width, eps))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64, eps)
            self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            cin = 64
            layout = zip((3, 4, 6, 3), (256, 512, 1024, 2048), (1, 2, 2, 2), strict=True)
            for i, (blocks, width, stride) in enumerate(layout, 1):
                setattr(self, f"layer{i}", nn.Sequential(Bottleneck(cin, width, stride),
                                                         *[Bottleneck(width, width, 1) for _ in range(blocks - 1)]))
                cin = width
            self.fc = nn.Linear(2048, classes)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return x.mean((2, 3))

        def forward(self, x):
            return self.features(x)

    return ResNet50()


def torch_resnet50():
    """ResNet-50 v1.5 in PyTorch with the BN eps and initialisation of src/models/resnet.py's "same" convention
    (He-normal fan-out convolutions, the last BatchNorm of each block at gamma 0)."""
    import torch

    model = torchvision_resnet50(torch, eps=1e-4)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif name.endswith("bn3"):
            torch.nn.init.zeros_(module.weight)
    return model


def torch_triplet_loss(torch, emb, margin):
    """Tripletloss with sum reduction on L2-normalised embeddings of consecutive (anchor, positive, negative)
    rows, as src/losses/triplet.py's."""
    x = emb / torch.sqrt((emb * emb).sum(1, keepdim=True) + 1e-12)
    anchor, positive, negative = x[0::3], x[1::3], x[2::3]
    return torch.relu(((anchor - positive) ** 2).sum(1) - ((anchor - negative) ** 2).sum(1) + margin).sum()


def torch_sgd(torch, model, cfg):
    """SGD momentum with the config's lr and weight decay, the decay not on BatchNorm parameters (as
    MindSpore's Momentum, whose default filter skips gamma and beta)."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    decay = [p for p in model.parameters() if id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if id(p) in bn_params]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr_max, momentum=cfg.momentum)
