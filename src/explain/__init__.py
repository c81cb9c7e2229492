"""Explanations: where in the face the model found the manipulation.

``methods`` (Captum: Grad-CAM, Integrated Gradients, LIME, Kernel SHAP; imports torch),
``render`` (overlay PNG, heat grid), ``deletion`` (the faithfulness metric), ``runner`` (the
service side: its own admission, threads and deadline). Import the submodules directly: this
package imports nothing, so the service loads torch and Captum only on the first explanation.
"""
