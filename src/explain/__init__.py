"""Explanations: where in the face the model found the manipulation.

``kinds`` (the method names, which of them a service can run, light), ``methods`` (LIME and
Kernel SHAP on a scoring function: NumPy and OpenCV, no torch, so on every backend),
``gradients`` (Captum: Grad-CAM and Integrated Gradients on the torch network; imports torch),
``render`` (overlay PNG, heat grid), ``deletion`` (the faithfulness metric), ``runner`` (the
service side: its own admission, threads and deadline). Import the submodules directly: this
package imports nothing, so the service loads torch and Captum only on the first gradient
explanation, and never where they are not installed.
"""
