/*
 * fsbench: in-process file system workloads, so that process start-up does
 * not drown what is measured. Each prints the elapsed milliseconds (and a
 * count, to check the result).
 *
 *   fsbench create DIR N SIZE     create N files of SIZE bytes
 *   fsbench unlink DIR N          unlink them
 *   fsbench stat LIST             lstat every path in LIST (one per line)
 *   fsbench chmod LIST            chmod 0600 every path in LIST
 *   fsbench readdir DIR           list DIR (no stat)
 *   fsbench read LIST             open and read every path in LIST to its end
 *                                 (the count is of bytes)
 *   fsbench lookup PATH           one lstat, in microseconds
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static char **read_list(const char *f, long *n)
{
	FILE *fp = fopen(f, "r");
	if (!fp) { perror(f); exit(1); }
	long cap = 1024, k = 0;
	char **v = malloc(cap * sizeof(*v));
	char *line = NULL;
	size_t len = 0;
	ssize_t r;
	while ((r = getline(&line, &len, fp)) > 0) {
		if (line[r - 1] == '\n') line[r - 1] = 0;
		if (k == cap) v = realloc(v, (cap *= 2) * sizeof(*v));
		v[k++] = strdup(line);
	}
	*n = k;
	return v;
}

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: see the header of fsbench.c\n"); return 2; }
	const char *op = argv[1];
	char p[4096];
	double t0 = now_ms();
	long ok = 0;
	if (!strcmp(op, "create") && argc == 5) {
		long n = atol(argv[3]), size = atol(argv[4]);
		char *buf = calloc(1, size > 0 ? size : 1);
		for (long i = 0; i < n; i++) {
			snprintf(p, sizeof(p), "%s/f%ld", argv[2], i);
			int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
			if (fd < 0) continue;
			if (write(fd, buf, size) == size) ok++;
			close(fd);
		}
	} else if (!strcmp(op, "unlink") && argc == 4) {
		long n = atol(argv[3]);
		for (long i = 0; i < n; i++) {
			snprintf(p, sizeof(p), "%s/f%ld", argv[2], i);
			ok += unlink(p) == 0;
		}
	} else if (!strcmp(op, "stat") || !strcmp(op, "chmod")) {
		long n;
		char **v = read_list(argv[2], &n);
		t0 = now_ms();
		struct stat st;
		for (long i = 0; i < n; i++)
			ok += (op[1] == 't' ? lstat(v[i], &st) : chmod(v[i], 0600)) == 0;
	} else if (!strcmp(op, "read")) {
		long n;
		char **v = read_list(argv[2], &n);
		static char buf[1 << 16];
		t0 = now_ms();
		for (long i = 0; i < n; i++) {
			int fd = open(v[i], O_RDONLY);
			if (fd < 0) continue;
			ssize_t r;
			while ((r = read(fd, buf, sizeof(buf))) > 0)
				ok += r;
			close(fd);
		}
	} else if (!strcmp(op, "readdir")) {
		DIR *d = opendir(argv[2]);
		if (!d) { perror(argv[2]); return 1; }
		struct dirent *e;
		while ((e = readdir(d)))
			ok += e->d_name[0] != '.';
		closedir(d);
	} else if (!strcmp(op, "lookup")) {
		struct stat st;
		double a = now_ms();
		ok = lstat(argv[2], &st) == 0;
		printf("%.1f %ld\n", (now_ms() - a) * 1000, ok);
		return ok ? 0 : 1;
	} else {
		fprintf(stderr, "fsbench: bad arguments\n");
		return 2;
	}
	printf("%.1f %ld\n", now_ms() - t0, ok);
	return 0;
}
