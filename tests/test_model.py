"""The CVAE's shapes and its ELBO terms, checked against independent computations."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from cvae.data.mnist import MNISTDataModule
from cvae.model.conv import Conv
from cvae.model.cvae import kl_per_dim, negative_elbo, reconstruction_nll, reparameterize, sample
from cvae.model.mlp import MLP


@pytest.fixture(scope="module")
def real_batch(data_dir):
    datamodule = MNISTDataModule(data_dir=data_dir, eval_batch_size=64)
    datamodule.setup()
    return next(iter(datamodule.val_dataloader()))


def test_layers_follow_the_reference_design():
    model = MLP(latent_dim=2)
    encoder = [(m.in_features, m.out_features) for m in model.encoder if isinstance(m, torch.nn.Linear)]
    decoder = [(m.in_features, m.out_features) for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert encoder == [(794, 512), (512, 256), (256, 4)]
    assert decoder == [(12, 256), (256, 512), (512, 784)]
    assert isinstance(model.decoder[-1], torch.nn.Linear), "the decoder must output logits, not probabilities"


def test_hidden_sizes_are_configurable():
    model = MLP(latent_dim=5, hidden_dims=[64])
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [64, 10]
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [64, 784]


def test_shapes(real_batch):
    x, y = real_batch
    model = MLP(latent_dim=7)
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (64, 7)
    z = reparameterize(mu, logvar)
    assert z.shape == (64, 7)
    assert model.decode(z, y).shape == (64, 784)
    samples = sample(model, y)
    assert samples.shape == (64, 1, 28, 28)
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(sample(model, y[:3], z[:3]), sample(model, y[:3], z[:3])), "given z, sampling is deterministic"


def test_label_changes_the_output(real_batch):
    model = MLP(latent_dim=2)
    z = torch.zeros(2, 2)
    assert not torch.allclose(model.decode(z, torch.tensor([0, 0])), model.decode(z, torch.tensor([0, 1])))


def test_reconstruction_nll_is_bernoulli_log_likelihood_summed_over_pixels(real_batch):
    x, _ = real_batch
    logits = torch.randn_like(x) * 3
    p = torch.sigmoid(logits.double())
    by_hand = -(x * p.log() + (1 - x) * (1 - p).log()).sum(dim=1)
    by_distribution = -Bernoulli(logits=logits.double(), validate_args=False).log_prob(x.double()).sum(dim=1)
    ours = reconstruction_nll(logits, x)
    assert ours.shape == (64,)
    torch.testing.assert_close(ours.double(), by_hand, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.double(), by_distribution, rtol=1e-5, atol=1e-3)


def test_kl_matches_torch_distributions_and_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    std = torch.exp(0.5 * logvar)
    closed_form = kl_per_dim(mu, logvar)
    torch.testing.assert_close(closed_form, kl_divergence(Normal(mu, std), Normal(0.0, 1.0)))

    q, p = Normal(mu.double(), std.double()), Normal(0.0, 1.0)
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(dim=0)
    torch.testing.assert_close(closed_form.double(), monte_carlo, rtol=0.02, atol=0.02)


def test_reparameterized_samples_have_the_posterior_moments_and_carry_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([[1.5, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(0.25)]], requires_grad=True)
    z = reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.02, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_negative_elbo_is_recon_plus_kl_and_bounds_the_data_likelihood(real_batch):
    x, y = real_batch
    torch.manual_seed(0)
    model = MLP(latent_dim=4)
    terms = negative_elbo(model, x, y)
    torch.testing.assert_close(terms["nelbo"], terms["recon"] + terms["kl"])
    torch.testing.assert_close(terms["kl"], terms["kl_dims"].sum(dim=1))
    assert (terms["kl"] >= 0).all()
    # An untrained decoder outputs p ~ 0.5 everywhere: about 784 * log 2 nats per image.
    assert terms["recon"].mean().item() == pytest.approx(784 * math.log(2), rel=0.1)


def test_importance_weighted_bound_is_tighter_than_the_elbo_and_tightens_with_k(real_batch):
    from cvae.model.cvae import importance_weighted_nll

    x, y = real_batch
    torch.manual_seed(0)
    model = MLP(latent_dim=2)
    with torch.no_grad():
        nelbo = torch.stack([negative_elbo(model, x, y)["nelbo"] for _ in range(50)]).mean(0)
        bounds = {k: importance_weighted_nll(model, x, y, k).mean().item() for k in (1, 10, 100)}
    assert bounds[1] == pytest.approx(nelbo.mean().item(), rel=2e-3), "k = 1 is the ELBO"
    assert bounds[100] < bounds[10] < bounds[1]


def test_conv_model_has_the_same_interface_and_shapes(real_batch):
    x, y = real_batch
    model = Conv(latent_dim=7, channels=[4, 8], hidden_dims=[32])
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (64, 7)
    assert model.decode(reparameterize(mu, logvar), y).shape == (64, 784)
    assert sample(model, y).shape == (64, 1, 28, 28)
    convs = [m for m in model.encoder.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 4), (4, 8)]
    assert model.encoder.convs(x[:2].view(-1, 1, 28, 28)).shape == (2, 8 * 7 * 7), "28 -> 14 -> 7"
    terms = negative_elbo(model, x, y)
    torch.testing.assert_close(terms["nelbo"], terms["recon"] + terms["kl"])
    with pytest.raises(ValueError, match=r"model.net.channels=\[4\] must name 2 widths"):
        Conv(channels=[4])
    with pytest.raises(ValueError, match=r"model.net.hidden_dims=\[\] is not allowed: it must be a non-empty list"):
        MLP(hidden_dims=[])


def learned_prior_model(latent_dim: int = 3) -> MLP:
    torch.manual_seed(1)
    model = MLP(latent_dim=latent_dim, learned_prior=True)
    with torch.no_grad():
        model.prior_mu.normal_()
        model.prior_logvar.normal_(0, 0.5)
    return model


def test_kl_to_the_learned_prior_matches_torch_distributions_and_monte_carlo(real_batch):
    x, y = real_batch
    model = learned_prior_model()
    with torch.no_grad():
        terms = negative_elbo(model, x, y)
    q = Normal(terms["mu"].double(), torch.exp(0.5 * terms["logvar"]).double())
    p = Normal(model.prior_mu[y].detach().double(), torch.exp(0.5 * model.prior_logvar[y]).detach().double())
    torch.testing.assert_close(terms["kl_dims"].double(), kl_divergence(q, p), rtol=1e-4, atol=1e-5)
    z = q.sample((100_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(dim=0)
    torch.testing.assert_close(terms["kl_dims"].double(), monte_carlo, rtol=0.02, atol=0.02)


def test_the_learned_prior_starts_as_the_reference_prior_and_receives_gradients(real_batch):
    x, y = real_batch
    torch.manual_seed(0)
    reference = MLP(latent_dim=4)
    learned = MLP(latent_dim=4, learned_prior=True)
    learned.load_state_dict(reference.state_dict(), strict=False)
    torch.manual_seed(1)
    kl_reference = negative_elbo(reference, x, y)["kl"]
    torch.manual_seed(1)
    terms = negative_elbo(learned, x, y)
    torch.testing.assert_close(terms["kl"], kl_reference)
    terms["nelbo"].mean().backward()
    assert learned.prior_mu.grad[y].abs().sum() > 0 and learned.prior_logvar.grad[y].abs().sum() > 0


def test_importance_weighted_bound_uses_the_learned_prior(real_batch):
    from cvae.model.cvae import importance_weighted_nll

    x, y = real_batch
    model = learned_prior_model(latent_dim=2)
    torch.manual_seed(0)
    with torch.no_grad():
        nelbo = torch.stack([negative_elbo(model, x, y)["nelbo"] for _ in range(50)]).mean(0)
        bound = importance_weighted_nll(model, x, y, 1).mean().item()
    assert bound == pytest.approx(nelbo.mean().item(), rel=2e-3), "k = 1 is the ELBO, KL to the learned prior"
