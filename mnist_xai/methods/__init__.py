"""The methods, by family. Importing this package registers every method."""
from .cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from .gradient import GradientXInput, NoiseTunnel, Saliency, SmoothGrad, SmoothGradSquared, VarGrad, compute_saliency
from .path import BlurIG, ExpectedGradients, GradientSHAP, GuidedIG, IntegratedGradients, XRAI
from .perturbation import Occlusion, occlusion_plan, window_starts
