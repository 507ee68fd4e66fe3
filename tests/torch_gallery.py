"""Models as people write them in PyTorch (the pytorch/examples style), and small learnable data sets for
them: the gallery that ``tests/test_torch_models.py`` trains under ``gradmon.torch.watch``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# -- data ---------------------------------------------------------------------------------------------------
def images(n: int = 512, channels: int = 1, size: int = 12, classes: int = 4, seed: int = 0):
    """Images whose class is a fixed random template (plus noise): ``(n, channels, size, size)``, labels."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = templates[y] + 0.5 * torch.randn(n, channels, size, size, generator=g)
    return x, y


def sequences(n: int = 512, length: int = 12, vocab: int = 16, classes: int = 3, seed: int = 0):
    """Token sequences whose class is which of ``classes`` marker tokens appears most: ``(n, length)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(classes, vocab, (n, length), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    marks = torch.rand(n, length, generator=g) < 0.4
    x = torch.where(marks, y[:, None].expand(-1, length), x)
    return x, y


def corpus(tokens: int = 4000, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    """A token stream with structure to learn: a noisy repeated phrase ``(tokens,)``."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randperm(vocab, generator=g)[:7]
    stream = phrase.repeat(tokens // 7 + 1)[:tokens]
    noise = torch.rand(tokens, generator=g) < 0.1
    return torch.where(noise, torch.randint(0, vocab, (tokens,), generator=g), stream)


def batchify(stream: torch.Tensor, batch: int) -> torch.Tensor:
    """``(steps, batch)`` columns of the stream, as the word language model example does."""
    n = stream.size(0) // batch
    return stream[: n * batch].view(batch, -1).t().contiguous()


# -- models -----------------------------------------------------------------------------------------------
class Net(nn.Module):
    """examples/mnist's network, smaller: functional activations and pooling."""

    def __init__(self, classes: int = 4, bias: float | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, classes)
        if bias is not None:
            nn.init.constant_(self.conv2.bias, bias)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class DeepSigmoidCNN(nn.Module):
    """A deep plain CNN with sigmoid after every convolution (the classic vanishing-gradient net)."""

    def __init__(self, depth: int = 8, width: int = 8, classes: int = 4, act=torch.sigmoid, he: bool = False) -> None:
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(depth)])
        self.head = nn.Linear(width, classes)
        if he:  # the ReLU twin, initialised for ReLU
            for conv in self.convs:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x):
        for conv in self.convs:
            x = self.act(conv(x))
        return self.head(x.mean((2, 3)))


class AllConvNet(nn.Module):
    """Only convolutions (no nn.Linear): strided convs, a 1x1 conv classifier, global average pooling."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, classes, 1),
        )

    def forward(self, x):
        return self.features(x).mean((2, 3))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (BatchNorm, an in-place residual add, optional downsampling)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TransformerClassifier(nn.Module):
    """Token embedding, learned positions, an nn.TransformerEncoder and a linear head on the mean."""

    def __init__(self, vocab: int = 16, d_model: int = 32, heads: int = 4, layers: int = 2, classes: int = 3,
                 length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, length, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        h = self.encoder(self.embed(x) * math.sqrt(self.embed.embedding_dim) + self.pos)
        return self.head(h.mean(1))


class RNNModel(nn.Module):
    """examples/word_language_model's model: encoder, LSTM, decoder, with tied weights."""

    def __init__(self, ntoken: int, ninp: int = 32, nhid: int = 32, nlayers: int = 2, dropout: float = 0.2,
                 tie_weights: bool = True) -> None:
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


class GRUClassifier(nn.Module):
    def __init__(self, vocab: int = 16, hidden: int = 32, classes: int = 3, bidirectional: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.gru = nn.GRU(16, hidden, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):
        h, _ = self.gru(self.embed(x))
        return self.out(h[:, -1])


class ElmanRNN(nn.Module):
    """A plain ReLU recurrent net: with a recurrent matrix of spectral radius above 1 its gradients explode
    through time."""

    def __init__(self, vocab: int = 16, hidden: int = 32, classes: int = 3, gain: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.RNN(16, hidden, batch_first=True, nonlinearity="relu")
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
            self.rnn.weight_hh_l0.copy_(gain * q)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.out(h[:, -1])


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.conv2(x)).mean((2, 3))


class FineTune(nn.Module):
    """A pretrained backbone (frozen later) and a new head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.backbone(x))
