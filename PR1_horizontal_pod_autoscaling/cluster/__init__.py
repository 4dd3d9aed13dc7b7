"""A local Kubernetes control plane for PR1's manifests: Go builds of the upstream binaries (cached per user),
certificates, and the processes (store, kube-apiserver, kube-controller-manager, KEDA) on 127.0.0.1."""
