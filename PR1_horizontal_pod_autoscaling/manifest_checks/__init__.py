"""The offline checks of the PR1 manifests, one module per family.

- ``documents``: loading manifests, the objects a sequence of ``kubectl apply`` leaves, and the pod,
  selector and port queries the other checks share;
- ``schema``: strict validation against Kubernetes' schemas and the CRD schemas in ``schemas/``, yamllint,
  ``kubectl kustomize``;
- ``workloads``: selectors and labels, Service, probe and ServiceMonitor ports, pod security and resources;
- ``autoscaling``: every HPA's and KEDA ScaledObject's target, replica bounds and queue targets;
- ``metrics``: every metric the adapter rules, HPAs and KEDA read is one the services export;
- ``pr2_code``: the ConfigMap against PR2's settings, container ports, image and model registry;
- ``compose``: the images against PR2's docker-compose file.

``validate_manifests.py`` runs them all on the cluster states the README's commands produce.
"""
