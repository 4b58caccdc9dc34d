"""The methods, by family. Importing this package registers every method."""
from .cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from .gradient import GradientXInput, NoiseTunnel, Saliency, SmoothGrad, SmoothGradSquared, VarGrad, compute_saliency
from .path import IntegratedGradients
from .perturbation import Occlusion, occlusion_plan, window_starts
from .propagation import Deconvolution, DeepLift, DeepLiftShap, GuidedBackprop, GuidedGradCAM
