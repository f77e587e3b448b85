package conformance

// A pull as a Kubernetes node's CRI plugin makes it (containerd's client
// Pull with unpack): every layer's Prepare carries its chain id in the
// label containerd.io/snapshot.ref, so a snapshotter that holds the layer
// answers AlreadyExists and the unpack skips it. Run by
// driver/tests/containerd.rs with -test.run TestPull, CONTAINERD_ADDRESS
// and PULL_REF (an image on a plain-HTTP registry) in the environment.

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
)

func TestPull(t *testing.T) {
	address, ref := os.Getenv("CONTAINERD_ADDRESS"), os.Getenv("PULL_REF")
	if address == "" || ref == "" {
		t.Fatal("CONTAINERD_ADDRESS and PULL_REF must be set")
	}
	client, err := containerd.New(address)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	})
	img, err := client.Pull(ctx, ref, containerd.WithPullUnpack,
		containerd.WithPullSnapshotter("unionfs"), containerd.WithResolver(resolver))
	if err != nil {
		t.Fatal(err)
	}
	unpacked, err := img.IsUnpacked(ctx, "unionfs")
	if err != nil || !unpacked {
		t.Fatalf("%s is not unpacked on unionfs: %v", ref, err)
	}
}
