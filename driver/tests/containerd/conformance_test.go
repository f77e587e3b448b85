// containerd's snapshotter conformance suite (snapshots/testsuite, from
// Debian's golang-github-containerd-containerd-dev) against
// `unionfs-driver snapshotter`, reached as containerd reaches a proxy
// plugin. Every case starts a snapshotter of its own on a fresh store and
// socket; at its end the snapshotter is stopped and no mount may be left
// under the case's directory. Built by driver/tests/containerd.rs in GOPATH
// mode (GO111MODULE=off GOPATH=...:/usr/share/gocode); run as root with
// -test.root. UNIONFS_DRIVER names the binary; unionfs-mount must be on PATH.
package conformance

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// start runs the snapshotter on a store under root and waits for its ready line.
func start(root string) (*exec.Cmd, string, error) {
	driver := os.Getenv("UNIONFS_DRIVER")
	if driver == "" {
		return nil, "", fmt.Errorf("UNIONFS_DRIVER must name the unionfs-driver binary")
	}
	sock := filepath.Join(root, "snapshotter.sock")
	cmd := exec.Command(driver, "--root", filepath.Join(root, "store"), "snapshotter", "--address", sock)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	lines := bufio.NewReader(stderr)
	for {
		line, err := lines.ReadString('\n')
		os.Stderr.WriteString(line)
		if strings.Contains(line, "serving containerd's snapshots API") {
			go io.Copy(os.Stderr, lines)
			return cmd, sock, nil
		}
		if err != nil {
			cmd.Wait()
			return nil, "", fmt.Errorf("the snapshotter ended before it served: %v", err)
		}
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	cmd, sock, err := start(root)
	if err != nil {
		return nil, nil, err
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	// The server's HTTP/2 (h2) refuses a socket path as :authority, which
	// grpc-go 1.33 makes of a plain target: name a host, as for TCP.
	conn, err := grpc.Dial(sock, grpc.WithInsecure(), grpc.WithContextDialer(dial), grpc.WithAuthority("localhost"))
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "unionfs")
	cleanup := func() error {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("the snapshotter ended badly: %v", err)
		}
		// The suite's directory holds the store and the suite's mount points.
		if left := mountsUnder(filepath.Dir(root)); len(left) > 0 {
			return fmt.Errorf("mounts left behind: %v", left)
		}
		return nil
	}
	return sn, cleanup, nil
}

func TestUnionfsSnapshotter(t *testing.T) {
	if _, err := exec.LookPath("unionfs-mount"); err != nil {
		t.Fatalf("unionfs-mount is not on PATH: mount.fuse3 could not run it")
	}
	testsuite.SnapshotterSuite(t, "unionfs", newSnapshotter)
}
