using System.Text.Json;
using System.Text.RegularExpressions;

namespace ImageioProxy.Tests.Deploy;

/// <summary>The instructions of a Dockerfile's final stage that decide how the container runs.</summary>
public sealed partial record DockerfileStage(string From, IReadOnlyDictionary<string, string> Environment,
    IReadOnlyList<string> Entrypoint, IReadOnlyList<string> Command, IReadOnlyList<string> Healthcheck, string? User,
    IReadOnlyList<string> Expose)
{
    /// <summary>Parses the last stage of <paramref name="path"/>: ENV (key=value form), exec-form ENTRYPOINT,
    /// CMD and HEALTHCHECK CMD, USER, EXPOSE. Shell forms are refused: the image has no shell.</summary>
    public static DockerfileStage ParseFinalStage(string path)
    {
        var lines = JoinContinuations(File.ReadAllLines(path));
        var from = "";
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        IReadOnlyList<string> entrypoint = [];
        IReadOnlyList<string> cmd = [];
        IReadOnlyList<string> health = [];
        string? user = null;
        var expose = new List<string>();
        foreach (var line in lines)
        {
            var match = Instruction().Match(line);
            if (!match.Success)
            {
                continue;
            }
            var args = match.Groups["args"].Value.Trim();
            switch (match.Groups["name"].Value.ToUpperInvariant())
            {
                case "FROM":
                    (from, env, entrypoint, cmd, health, user) = (args, new(StringComparer.Ordinal), [], [], [], null);
                    expose.Clear();
                    break;
                case "ENV":
                    foreach (Match pair in EnvPair().Matches(args))
                    {
                        env[pair.Groups["key"].Value] = pair.Groups["value"].Value;
                    }
                    break;
                case "ENTRYPOINT":
                    entrypoint = ExecForm(args, line);
                    break;
                case "CMD":
                    cmd = ExecForm(args, line);
                    break;
                case "HEALTHCHECK":
                    var at = args.IndexOf("CMD ", StringComparison.Ordinal);
                    health = at < 0 ? [] : ExecForm(args[(at + 4)..].Trim(), line);
                    break;
                case "USER":
                    user = args;
                    break;
                case "EXPOSE":
                    expose.AddRange(args.Split(' ', StringSplitOptions.RemoveEmptyEntries));
                    break;
            }
        }
        return new DockerfileStage(from, env, entrypoint, cmd, health, user, expose);
    }

    private static List<string> JoinContinuations(string[] raw)
    {
        var lines = new List<string>();
        var current = "";
        foreach (var line in raw)
        {
            if (line.TrimStart().StartsWith('#'))
            {
                continue;
            }
            if (line.EndsWith('\\'))
            {
                current += line[..^1] + " ";
                continue;
            }
            lines.Add(current + line);
            current = "";
        }
        return lines;
    }

    private static string[] ExecForm(string args, string line)
        => args.StartsWith('[') ? JsonSerializer.Deserialize<string[]>(args)! : throw new InvalidOperationException($"not exec form: {line}");

    [GeneratedRegex(@"^\s*(?<name>[A-Za-z]+)\s+(?<args>.*)$")]
    private static partial Regex Instruction();

    [GeneratedRegex(@"(?<key>[A-Za-z_][A-Za-z0-9_]*)=(?<value>""[^""]*""|\S*)")]
    private static partial Regex EnvPair();
}
