"""The reference design: multilayer perceptrons on the image and the one-hot digit, concatenated.

encoder  [x ; onehot(y)]  784+10 -> 512 -> 256 -> (mu, log sigma^2)
decoder  [z ; onehot(y)]  latent_dim+10 -> 256 -> 512 -> 784 Bernoulli logits
"""

from cvae.model.network import NUM_CLASSES, NUM_PIXELS, Network, mlp, widths


class MLP(Network):
    def __init__(self, latent_dim: int = 2, hidden_dims: list[int] = (512, 256), learned_prior: bool = False):
        super().__init__(latent_dim, learned_prior)
        hidden_dims = widths(hidden_dims, "model.net.hidden_dims")
        self.encoder = mlp([NUM_PIXELS + NUM_CLASSES, *hidden_dims, 2 * latent_dim])
        self.decoder = mlp([latent_dim + NUM_CLASSES, *reversed(hidden_dims), NUM_PIXELS])
