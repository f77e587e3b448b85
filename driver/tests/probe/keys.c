/* What a container can do with keyrings: each line is a call and its
 * result (a number, or -errno). Built statically into the test rootfs.
 * `keys plant NAME` instead joins (or makes) the session keyring NAME,
 * opens it to everyone, adds a key "planted" to it, says "planted" and
 * holds it until stdin closes: what an attacker on the host would do. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_DESCRIBE 6
#define KEYCTL_SEARCH 10
#define KEYCTL_SETPERM 5
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_USER_KEYRING -4

static long r(long v) { return v < 0 ? -errno : v; }

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "plant") == 0) {
        long k = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, argv[2]);
        if (k < 0 || syscall(SYS_keyctl, KEYCTL_SETPERM, k, 0x3f3f3f3f) < 0 ||
            syscall(SYS_add_key, "user", "planted", "x", 1, k) < 0) {
            perror("plant");
            return 1;
        }
        printf("planted\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
        return 0;
    }
    char desc[256] = "";
    long s = r(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    long u = r(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0));
    long d = r(syscall(SYS_keyctl, KEYCTL_DESCRIBE, KEY_SPEC_SESSION_KEYRING, desc, sizeof desc - 1));
    long f = r(syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", "planted", 0));
    long a = r(syscall(SYS_add_key, "user", "mine", "x", 1, KEY_SPEC_USER_KEYRING));
    printf("session %ld\nuser %ld\ndescribe %ld %s\nsearch %ld\nadd_key %ld\n", s, u, d,
           d > 0 ? desc : "-", f, a);
    return 0;
}
