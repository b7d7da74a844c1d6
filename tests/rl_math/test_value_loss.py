"""Clipped value loss against hand-computed values and gradients (float64)."""


from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import value_loss


def test_value_loss_hand_computed():
    """clip_range 0.2, V_clip = old + clip(V - old, -0.2, 0.2), loss = 0.5*max(sq, sq_clip):

    t0: V 1.1, old 1.2, R 0  : V_clip = 1.1 (inside)   0.5*max(1.21, 1.21) = 0.605, grad V-R = 1.1
    t1: V 2.0, old 1.2, R 3  : V_clip = 1.4            0.5*max(1.0, 2.56)  = 1.28,  grad 0 (clipped)
    t2: V 0.5, old 0.5, R 1.5: V_clip = 0.5            0.5*max(1.0, 1.0)   = 0.5,   grad -1.0
    t3: V 2.0, old 1.2, R 0  : V_clip = 1.4            0.5*max(4.0, 1.96)  = 2.0,   grad 2.0
    t4: padding -> 0.
    value_clip_frac = 1/4; value_mean = (1.1+2+0.5+2)/4 = 1.4; value_error = (1.21+1+1+4)/4.
    """
    values = t([[1.1, 2.0, 0.5, 2.0, 9.0]]).requires_grad_()
    old = t([[1.2, 1.2, 0.5, 1.2, 0.0]])
    returns = t([[0.0, 3.0, 1.5, 0.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    close(loss, [[0.605, 1.28, 0.5, 2.0, 0.0]])
    close(stats["value_clip_frac"], 0.25)
    close(stats["value_mean"], 1.4)
    close(stats["value_error"], 7.21 / 4)
    loss.sum().backward()
    close(values.grad, [[1.1, 0.0, -1.0, 2.0, 0.0]])


def test_value_loss_without_clipping():
    """clip_range None: 0.5*(V - R)^2 = [0.5*4, 0.5*0.25]."""
    loss, stats = value_loss(t([[2.0, 1.0]]), t([[0.0, 0.0]]), t([[0.0, 1.5]]), t([[1, 1]]), None)
    close(loss, [[2.0, 0.125]])
    close(stats["value_clip_frac"], 0.0)
