using System.Reflection;
using ImageioProxy.Hosting;

namespace ImageioProxy.Tests.Deploy;

/// <summary>Every configuration key is documented (house rule: every limit configurable and documented).</summary>
public class DocumentationTests
{
    [Fact]
    public void Every_key_of_every_options_section_is_in_docs_configuration_md()
    {
        var docs = File.ReadAllText(DeployFiles.Path("docs/configuration.md"));
        var keys = typeof(ProxyServer).Assembly.GetTypes()
            .Where(t => t.Namespace == "ImageioProxy.Configuration" && t.GetField("Section", BindingFlags.Public | BindingFlags.Static) is not null)
            .SelectMany(t => t.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite)
                .Select(p => $"{t.GetField("Section")!.GetValue(null)}:{p.Name}"))
            .ToList();

        keys.Should().Contain("Monitoring:Port").And.Contain("Remote:Port");
        keys.Where(k => !docs.Contains($"`{k}`", StringComparison.Ordinal)).Should().BeEmpty("docs/configuration.md documents every key");
        docs.Should().Contain($"`{OperationsSetup.ConfigFileKey}`");
    }

    [Fact]
    public void The_readme_links_the_operations_and_configuration_guides()
    {
        var readme = File.ReadAllText(DeployFiles.Path("README.md"));

        readme.Should().Contain("docs/operations.md").And.Contain("docs/configuration.md");
        File.Exists(DeployFiles.Path("docs/operations.md")).Should().BeTrue();
    }
}
