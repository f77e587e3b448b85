/* Push a command into the input of the terminal on fd 0 (TIOCSTI), as a
 * container would to make the host's shell run it once it exits. Prints 0
 * when the kernel took it, else -errno. */
#include <errno.h>
#include <stdio.h>
#include <sys/ioctl.h>

int main(void) {
    const char *cmd = "#injected\n";
    int r = 0;
    for (const char *c = cmd; *c && r == 0; c++)
        if (ioctl(0, TIOCSTI, c) < 0)
            r = -errno;
    printf("tiocsti %d\n", r);
    return 0;
}
