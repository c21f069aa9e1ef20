"""ResNet-50 in PyTorch for the benchmarks that compare with it (bench_train.py, profile_ops.py, parity_torch.py)."""


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
