"""The paper's second experiment: a variational autoencoder whose posterior q(z | x) is a
normalizing flow amortised by the encoder (``nfcli vae``, the paper's Table 2).

    model.py     the VAE: encoder, decoder, the flow posterior, the ELBO and ln p(x) by
                 importance sampling (``VAE``, ``VaeSpec``)
    train.py     training (``VaeConfig``, ``fit_vae``: annealed free energy, exact resume) and
                 the test −ln p(x) (``evaluate``)
    data.py      the images: MNIST, a generated set, a user's .npy/.npz; binarisation
    run.py       one trained VAE end to end (checkpoint, metrics.json, figures) and the table
                 over several K, as ``nfcli vae`` runs them
    figures.py   curves, samples and reconstructions

``from nfcli.vae import VaeConfig, fit_vae, evaluate, load_images`` gives the library's calls."""

from nfcli.vae.data import ImageData, load_images
from nfcli.vae.model import VAE, VAE_FLOWS, VaeSpec
from nfcli.vae.train import VaeConfig, evaluate, fit_vae

__all__ = [
    "VAE",
    "VAE_FLOWS",
    "ImageData",
    "VaeConfig",
    "VaeSpec",
    "evaluate",
    "fit_vae",
    "load_images",
]
